"""`unifairseq-serve`: parse the options, start uvicorn, load the model behind /health, drain on SIGTERM.

SIGTERM (or Ctrl-C) drains: from that moment new requests get 503 with Retry-After (a load balancer sends
them to another replica), the requests already accepted are computed and answered, then the process exits
0. A second signal exits at once."""
from __future__ import annotations

import json
import logging
import sys
import threading
import time

from unifairseq import cli
from unifairseq.serve.config import PROG, ConfigError, Settings, parser, settings_from

log = logging.getLogger("unifairseq.serve")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name.endswith(".access"):
            return msg  # already one JSON object
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name, "msg": msg}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    for name in ("unifairseq.serve", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False


def loader(settings: Settings):
    def load():
        import torch  # deferred: --help imports no torch

        from unifairseq.serve.engine import Engine

        if settings.threads:
            torch.set_num_threads(settings.threads)
        return Engine.load(settings.base, dict(settings.deltas), settings.data, settings.delta_dirs,
                           bpe=settings.bpe, max_input_tokens=settings.max_input_tokens,
                           label_dict=settings.label_dict, **settings.overrides())
    return load


def serve(settings: Settings) -> int:
    import uvicorn

    from unifairseq.serve.app import create_app

    engine = loader(settings)()  # before the port opens: a bad base or delta is one line, exit 2
    app = create_app(settings, lambda: engine, load_in_background=False)
    state = app.state

    class DrainingServer(uvicorn.Server):
        """uvicorn's server whose first SIGTERM/SIGINT drains before it stops (uvicorn itself would stop
        accepting at once); the signal is not re-raised on exit, so a drained server exits 0."""

        draining = False

        def handle_exit(self, sig, frame):
            if self.draining or state.scheduler is None:
                self.force_exit = self.draining
                self.should_exit = True
                return
            self.draining = True
            state.scheduler.drain()
            log.info("draining: %d requests queued", state.scheduler.depth())

            def finish():
                done = state.scheduler.wait_idle(settings.drain_timeout_s)
                time.sleep(0.05)  # the handlers of the last batch send their answers
                log.info("drained" if done else "drain timeout: exiting with requests unanswered")
                self.should_exit = True

            threading.Thread(target=finish, name="unifairseq-drain", daemon=True).start()

    config = uvicorn.Config(app, host=settings.host, port=settings.port, access_log=False, log_config=None,
                            timeout_graceful_shutdown=int(settings.drain_timeout_s) + 5, lifespan="on")
    server = DrainingServer(config)
    server.run()
    return 0 if not state.error else 1


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup_logging()

    def body():
        return serve(settings_from(args))

    sys.exit(cli.run(PROG, body, errors=(ConfigError,)))


if __name__ == "__main__":
    main()
