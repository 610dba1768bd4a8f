"""spark-submit entry point for the data generator: the same code path as `segscale generate`.

    spark-submit --py-files dist/segscale-*.whl jobs/generate_data.py --customers 6000000 --out s3://bucket/input
"""

import sys

from segscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
