"""The run: stages wired from reads through transforms and models to publication, and the commands built on
them (run, train, score, backfill, generate)."""
