"""`python -m segscale.pipeline [COMMAND ...]`: print the stage graph of each command (all by default) as Mermaid,
with each stage's purpose."""

import sys

from segscale.pipeline.commands import GRAPHS

for command in sys.argv[1:] or list(GRAPHS):
    graph = GRAPHS[command]
    print(f"%% segscale {command}")
    print(graph.mermaid())
    for stage in graph.stages:
        print(f"%%   {stage.name}: {stage.doc}")
    print()
