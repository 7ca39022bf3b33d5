"""`python -m llmcore.entrypoints.openai.api_server [flags]`: the same program as
`llmcore-server [flags]` (llmcore/entrypoints/cli.py).

The app itself is built in openai/app.py (re-exported here for existing importers); this
module only runs the program, so nothing that cli.py imports imports it back.
"""

from llmcore.entrypoints.openai.app import (APIKeyMiddleware, LifecycleMiddleware,  # noqa: F401
                                            add_import_middleware, build_app, load_middleware,
                                            make_server_config)

if __name__ == "__main__":
    from llmcore.entrypoints.cli import main

    main()
