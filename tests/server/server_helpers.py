"""Constants and helpers shared by the server tests (the session server's command line)."""

import os
import socket

HOST = "127.0.0.1"

API_KEY = "test-key-123"
ROOT_PATH = "/proxy"
ALLOWED_ORIGIN = "http://allowed.example"
SERVED_NAMES = ["smol", "smol-alias"]
MAX_MODEL_LEN = 512
# Small KV cache so that start-up does not zero 4 GiB (--cpu-kv-cache-space default).
SMALL_KV = ["--cpu-kv-cache-space", "0.5", "--swap-space", "0"]
SESSION_FLAGS = ["--max-model-len", str(MAX_MODEL_LEN), *SMALL_KV,
                 "--served-model-name", *SERVED_NAMES, "--api-key", API_KEY,
                 "--root-path", ROOT_PATH, "--allowed-origins", f'["{ALLOWED_ORIGIN}"]',
                 "--allowed-methods", '["GET", "POST"]', "--allowed-headers",
                 '["Authorization", "Content-Type"]']


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pythonpath() -> str:
    import llmcore

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(llmcore.__file__)))
    old = os.environ.get("PYTHONPATH")
    return pkg_parent + (os.pathsep + old if old else "")
