"""Methods defined outside gfbench, registered through the ``gfbench.methods`` entry-point group by a tiny
dist-info that the tests write (tests/worlds.py: ``install_plugin``). They use only gfbench's public seams."""
