"""Every public function, class and method of the package has a docstring (issue 20), checked over the
imported modules so that docstrings assembled at import time (the river estimators') count.

Public: a name without a leading underscore, defined in the module that is being walked (not
imported into it), and, for methods, defined on the class itself (not inherited, e.g. from river).
"""

import importlib
import inspect
import pkgutil

import connectors
import streamrnn


def _modules():
    for package in (streamrnn, connectors):
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.startswith("streamrnn.connectors"):  # a symlink to connectors/, for the wheel
                yield importlib.import_module(info.name)


def _public_members(module):
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj
        elif inspect.isclass(obj):
            yield f"{module.__name__}.{name}", obj
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    yield f"{module.__name__}.{name}.{attr}", _bound(obj, attr, member)


def _bound(cls, attr, member):
    """The member as looked up on the class, so inspect.getdoc can find an overridden base method's doc."""
    return member if isinstance(member, property) else getattr(cls, attr)


def _has_doc(obj):
    # A class needs its own docstring; a method that implements a documented method of a base class
    # (a Sink's write, say) inherits that one, as inspect.getdoc and the API reference do.
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else inspect.getdoc(obj)
    return bool(doc and doc.strip())


def test_every_public_function_class_and_method_has_a_docstring():
    seen, missing = set(), []
    for module in _modules():
        for qualname, obj in _public_members(module):
            if id(obj) in seen:  # a package re-exported under a second name (streamrnn.connectors)
                continue
            seen.add(id(obj))
            if not _has_doc(obj):
                missing.append(qualname)
    assert len(seen) > 300  # the walk found the package, not an empty namespace
    assert missing == [], f"{len(missing)} public objects without a docstring:\n" + "\n".join(missing)
