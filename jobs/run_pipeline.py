"""spark-submit entry point for the main job: the same code path as `segscale run`.

    spark-submit --py-files dist/segscale-*.whl jobs/run_pipeline.py --config conf/cluster.yaml \
        --snapshot-date 2024-12-31
"""

import sys

from segscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
