"""``shoplens demo``: search-by-image on real shop photos, end to end, on this machine.

This folder is the package ``shoplens.demo`` (``[tool.setuptools] package-dir``): it uses the
device sdk and the cloud service together, so it lives beside them, not in the core package.

- :mod:`shoplens.demo.grocery`: the Grocery Store dataset as a catalog and its queries;
- :mod:`shoplens.demo.service`: the search service in a background thread;
- :mod:`shoplens.demo.run`: the run itself (index, search, score, report);
- :mod:`shoplens.demo.cli`: the ``shoplens demo`` command (mounted by the root CLI).
"""
