"""The `fedmq` command line: run, broker, cloud, edge, serve, estimate, report and the tools.

The top of the import graph: it wires config, broker, cloud and edge runtimes together.
"""
