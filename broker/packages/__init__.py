"""Model packages: a vendor's model as a content-addressed folder, and its prepared environment.

``PackageStore`` (``store.py``) adds and verifies packages; ``Environments``
(``environment.py``) builds their virtualenvs and artefacts once, outside call time; the
manifest format is in ``manifest.py`` and the digest's definition in ``digest.py``. The sandbox
runtime (``broker/runtimes/sandbox``) loads packages from here at every worker start.
"""
