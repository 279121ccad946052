"""What runs first inside the sandbox process, before the user's code (see ``sandbox.py``).

This file is the source of ``python -I -S -c``: it is read by the parent and never imported in the
service. In order it (1) sets the resource limits, (2) imports the modules offered to the code while it
still can, (3) drops to an unprivileged user when started as root, (4) installs an audit hook that refuses
file access outside the working directory, processes, sockets, native code and introspection of the hook,
then (5) runs the code read from stdin, printing the value of a last bare expression as a REPL would.
The limits and the user are enforced by the kernel; the hook is a Python-level layer on top of them.
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

source = sys.stdin.read()
sys.stdin.close()
os.chdir(WORKDIR)

if os.getuid() == 0 and CONFIG["uid"] is not None:
    os.setgroups([])
    os.setgid(CONFIG["gid"])
    os.setuid(CONFIG["uid"])

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


_READABLE = tuple(os.path.realpath(path) + os.sep for path in CONFIG["readable"])


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
    os._exit(exc.code if isinstance(exc.code, int) else 1)
except MemoryError:
    sys.stdout.flush()
    sys.stderr.write(f"MemoryError: the memory limit of {CONFIG['memory_bytes'] // 2**20} MiB was exceeded\n")
    os._exit(3)
except BaseException as exc:
    sys.stdout.flush()
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<code>":
        tb = tb.tb_next  # the sandbox's own frames are noise to the model
    sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb, limit=-5)))
    os._exit(1)
sys.stdout.flush()
os._exit(0)
