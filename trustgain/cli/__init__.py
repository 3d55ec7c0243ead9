"""The ``trustgain`` command: thin commands over library calls."""
