"""Scripts that run ON the host, with the host's own python3 and its standard library only.

`Remote.run_script()` sends a file's text to `python3 -c` and its request as JSON on
stdin; the answer is what the script prints. Each file is a plain script, so it is
linted and tested on this machine like the rest of the tree.
"""
