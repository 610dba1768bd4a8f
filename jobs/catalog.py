"""spark-submit entry point that registers the published tables in the cluster's metastore: the same code path as
`segscale catalog` (docs/querying.md).

    spark-submit --py-files dist/segscale-*.whl jobs/catalog.py --config conf/cluster.yaml
"""

import sys

from segscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["catalog", *sys.argv[1:]]))
