"""python -m services.console --config run/local/mesh.yaml: the topology page's server."""

from __future__ import annotations

import argparse
import signal
import threading

from services.common import telemetry
from services.config.mesh import MeshConfig
from services.console.observe import Observer
from services.console.server import Console, build_server


def main() -> None:
    parser = argparse.ArgumentParser(prog="services.console")
    parser.add_argument("--config", default="config/mesh.yaml")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    telemetry.log_json("ragmesh-console", args.log_level)
    config = MeshConfig.load(args.config)
    console = Console(Observer(config, config.console.window_s), config.console)
    server, _ = build_server(console, config.console.host, config.console.port)
    threading.Thread(target=console.run, name="scraper", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        console.stop()
        server.server_close()


if __name__ == "__main__":
    main()
