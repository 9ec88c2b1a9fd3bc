"""vdigui's Qt desktop application (PySide6 + pyqtgraph).

Qt lives only in this package; it talks to the engine through ``vdigui.engine``'s public names.
PySide6 is pinned below 6.12: shiboken6 6.12 drops a reference to ``None`` on every void Qt
call under Python 3.11 and the interpreter aborts after a few thousand of them
(``tests/gui/test_models.py::test_void_qt_calls_keep_none_balanced`` guards against it).
"""
