"""What runs first inside the sandbox process, before the user's code (see ``sandbox.py``).

This file is the source of ``python -I -S -c``: it is read by the parent and never imported in the
service. In order it (1) sets the resource limits, (2) imports the modules offered to the code while it
still can, (3) drops to an unprivileged user when started as root without kernel isolation, (4) writes
the input files into the working directory, (5) installs an audit hook that refuses file access outside
the working directory and the standard library, processes, sockets, native code and introspection of the
hook, then (6) runs the code read from stdin, printing the value of a last bare expression as a REPL
would, and (7) reports the files left in the working directory on a pipe of its own.
The kernel enforces the isolation and the limits; the hook is a Python-level second wall.
"""

import json
import os
import resource
import sys

CONFIG = json.loads(sys.argv[1])
WORKDIR = CONFIG["workdir"]

for _name, _value in (
    ("RLIMIT_AS", CONFIG["memory_bytes"]),
    ("RLIMIT_CPU", CONFIG["cpu_seconds"]),
    ("RLIMIT_FSIZE", CONFIG["file_bytes"]),
    ("RLIMIT_NOFILE", 64),
    ("RLIMIT_CORE", 0),
    ("RLIMIT_NPROC", CONFIG["max_processes"]),
):
    # the hard CPU limit one second later: SIGXCPU at the soft limit, SIGKILL if it is ignored
    _hard = _value + 1 if _name == "RLIMIT_CPU" else _value
    resource.setrlimit(getattr(resource, _name), (_value, _hard))

import ast  # noqa: E402
import traceback  # noqa: E402

for _module in CONFIG["preload"]:
    try:
        __import__(_module)
    except ImportError:
        pass

_request = json.loads(sys.stdin.read())
sys.stdin.close()
source = _request["code"]
os.chdir(WORKDIR)

if os.getuid() == 0 and CONFIG["uid"] is not None:
    os.setgroups([])
    os.setgid(CONFIG["gid"])
    os.setuid(CONFIG["uid"])

for _name, _text in _request["files"].items():  # names checked by the parent: inside WORKDIR
    _path = os.path.join(WORKDIR, _name)
    os.makedirs(os.path.dirname(_path), exist_ok=True)
    with open(_path, "w", encoding="utf-8") as _file:
        _file.write(_text)
del _request

_BLOCKED_IMPORTS = frozenset(CONFIG["blocked_imports"])
_DENY_PREFIXES = (
    "os.fork",
    "os.forkpty",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "os.kill",
    "os.killpg",
    "os.setuid",
    "os.chroot",
    "subprocess.",
    "socket.",
    "ctypes.",
    "gc.get_",
    "sys._current_frames",
    "sys.setprofile",
    "sys.settrace",
    "signal.pthread_kill",
    "pty.",
    "mmap.",
    "code.__new__",
    "function.__new__",
    "sys.addaudithook",
    "cpython.",
    "_thread.start_new_thread",
    "resource.setrlimit",
    "resource.prlimit",
)
_PATH_EVENTS = frozenset(
    "open os.listdir os.scandir os.chdir os.chmod os.chown os.remove os.rename os.rmdir os.mkdir "
    "os.symlink os.link os.truncate os.utime shutil.copyfile shutil.copytree shutil.rmtree "
    "shutil.move os.chflags os.lchown os.setxattr os.removexattr os.listxattr os.getxattr".split()
)


# the interpreter's own search path under -I -S: the standard library and its extension modules
_READABLE = tuple(os.path.realpath(path) + os.sep for path in sys.path if path)


def _hook(
    event,
    args,
    _root=os.path.realpath(WORKDIR),
    _readable=_READABLE,
    _blocked=_BLOCKED_IMPORTS,
    _deny=_DENY_PREFIXES,
    _paths=_PATH_EVENTS,
    _realpath=os.path.realpath,
    _sep=os.sep,
):
    # everything the hook uses arrives as defaults: immutable, and replacing them is itself refused
    if event.startswith(_deny):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import":
        if args[0].partition(".")[0] in _blocked:
            raise ImportError(f"sandbox: module {args[0]!r} is not available")
        return
    if event == "object.__setattr__" and type(args[0]).__name__ in ("function", "code", "cell"):
        raise PermissionError("sandbox: changing functions is not allowed")
    if event in _paths and args and isinstance(args[0], str | bytes):
        path = args[0].decode() if isinstance(args[0], bytes) else args[0]
        real = _realpath(path)
        if real == _root or real.startswith(_root + _sep):
            return
        writing = event != "open" or (len(args) > 1 and isinstance(args[1], str) and args[1][:1] in "wax+")
        if (
            event == "open"
            and len(args) > 2
            and isinstance(args[2], int)
            and args[2] & (os.O_WRONLY | os.O_RDWR)
        ):
            writing = True
        if not writing and event == "open" and real.startswith(_readable):
            return  # the standard library's own files, for imports
        raise PermissionError(f"sandbox: access to {path!r} outside the working directory is not allowed")


sys.addaudithook(_hook)
del _hook


def _report(_fd=CONFIG["report_fd"], _walk=os.walk, _root=WORKDIR, _write=os.write, _dumps=json.dumps):
    # the names only (at most 100): what the caller lists as the files the code left
    if _fd is None:
        return
    names = []
    try:
        for folder, _, files in _walk(_root):
            names += [os.path.relpath(os.path.join(folder, f), _root) for f in files]
        _write(_fd, _dumps(sorted(names)[:100]).encode())
    except Exception:
        pass


def _run(text):
    tree = ast.parse(text, "<code>", "exec")
    last = tree.body[-1] if tree.body else None
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    if isinstance(last, ast.Expr):
        tree.body.pop()
        exec(compile(tree, "<code>", "exec"), namespace)
        value = eval(compile(ast.Expression(last.value), "<code>", "eval"), namespace)
        if value is not None:
            print(repr(value))
    else:
        exec(compile(tree, "<code>", "exec"), namespace)


try:
    _run(source)
except SystemExit as exc:
    sys.stdout.flush()
    _report()
    os._exit(exc.code if isinstance(exc.code, int) else 1)
except MemoryError:
    sys.stdout.flush()
    sys.stderr.write(f"MemoryError: the memory limit of {CONFIG['memory_bytes'] // 2**20} MiB was exceeded\n")
    _report()
    os._exit(3)
except BaseException as exc:
    sys.stdout.flush()
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<code>":
        tb = tb.tb_next  # the sandbox's own frames are noise to the model
    sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb, limit=-5)))
    _report()
    os._exit(1)
sys.stdout.flush()
_report()
os._exit(0)
