"""The `keras-dense` commands, one module per command (see `keras_dense.cli`).

Each module defines `register(subparsers)`; the parser it adds sets `run=<function(args) ->
int>`. Commands sit on top of everything else: they look the task up by name
(`keras_dense.tasks`) and call the library.
"""
