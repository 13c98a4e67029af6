"""The `wig` commands, one module each: its ``NAME``, its place in ``wig --help`` (``ORDER``), its
parser (``add_parser``), the checks that run before torch is imported (``check``, optional), its
handler (``run``), ``LIGHT = True`` where it imports neither torch nor diffusers, and ``EXTRA``
where it needs more than the core install (`wig.extras`: refused in one line, even for --help). Every module
here is imported with this package (`wig.plugins.discover`): a new command is a new module."""

from wig.plugins import discover

discover(__name__)
