"""One replica of the lab's write load, as a pod of the API server stand-in runs it.

Its connection strings come from its environment (DATABASE_URL and WRITER_URL, from
a Secret when the pod started), written to an env file of its own for the load to
read. SIGTERM pauses the writes and ends the process once none is in flight, as an
application that shuts down cleanly does. Every write goes to LOG_DIR/<pod>.jsonl.
"""

import os
import signal
import sys
import threading
import time
from pathlib import Path

from cutover import load

KEYS = ("DATABASE_URL", "WRITER_URL")


def main() -> None:
    pod = os.environ["POD_NAME"]
    logs = Path(os.environ["LOG_DIR"])
    env_file = logs / f"{pod}.env"
    env_file.write_text("".join(f"{k}={os.environ[k]}\n" for k in KEYS))
    with (logs / f"{pod}.jsonl").open("a") as handle:
        work = load.Load(
            env_file=env_file,
            keys=KEYS,
            tables=os.environ["TABLES"].split(","),
            log=load.WriteLog(handle),
            workers=2,
            rate=float(os.environ.get("RATE", "100")),
        )

        def shut_down(*_: object) -> None:
            def drain() -> None:
                work.gate.pause()
                while not work.gate.drained():
                    time.sleep(0.01)
                work.stop.set()

            threading.Thread(target=drain, daemon=True).start()

        signal.signal(signal.SIGTERM, shut_down)
        work.run(port=0, duration=None)
    sys.exit(0)


if __name__ == "__main__":
    main()
