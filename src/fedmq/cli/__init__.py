"""The `fedmq` command line: run, broker, cloud, edge, centralized, codecs.

The top of the import graph: it wires config, broker, cloud and edge runtimes together.
"""
