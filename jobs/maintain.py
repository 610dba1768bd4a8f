"""spark-submit entry point for table maintenance: the same code path as `segscale maintain` (docs/tables.md).

    spark-submit --py-files dist/segscale-*.whl jobs/maintain.py --config conf/cluster.yaml
"""

import sys

from segscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["maintain", *sys.argv[1:]]))
