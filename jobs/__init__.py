"""Spark jobs of the clickstream-segments pipeline: one module per stage, each with ``main()``.

Stage logic is written as pure ``DataFrame -> DataFrame`` transforms; only ``run``/``main``
functions touch the session, read files or write tables.
"""

import os as _os
import sys as _sys


def _drop_script_directory_from_path() -> None:
    """Undo what running a stage file as a script does to ``sys.path``.

    ``spark-submit jobs/ingest.py`` (like ``python jobs/ingest.py``) puts the script's own
    directory -- this package's source folder -- first on ``sys.path``.  Every module here would
    then also be importable under a bare top-level name (``config``, ``cluster``, ``metrics``,
    ``evaluate``, ``report``, ``pipeline``, ...) and shadow an installed distribution of that name
    (Hugging Face's ``evaluate`` is a real one).  Code here is only ever imported as
    ``jobs.<module>``, so the folder leaves the path as soon as the package is first imported.
    """
    main_file = getattr(_sys.modules.get("__main__"), "__file__", None)
    if not main_file:
        return
    script_dir = _os.path.dirname(_os.path.realpath(main_file))
    if _os.path.basename(script_dir) != __name__ or not _os.path.isfile(
        _os.path.join(script_dir, "__init__.py")
    ):
        return
    _sys.path[:] = [p for p in _sys.path if _os.path.realpath(p or _os.curdir) != script_dir]


_drop_script_directory_from_path()
