"""Pure statistics on arrays: ratings, agreement, consensus, annotator quality, stopping rules.

Nothing here touches the store, the file system or a service; every function takes
arrays and returns numbers, so each one can be checked against a reference implementation.
"""
