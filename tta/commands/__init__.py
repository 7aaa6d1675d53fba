"""Sub-commands of the ``tta`` command line (see ``tta.cli``)."""
