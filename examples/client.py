"""Use a running asynctask service from Python: submit a task, wait for it, print the result.

Start the quickstart service first:   gunicorn 'examples.quickstart:app' --bind 127.0.0.1:8000
Then run:                             python examples/client.py [http://127.0.0.1:8000]

Set ASYNCTASK_API_TOKEN when the service requires a token. The same from the shell:
    asynctask submit http://127.0.0.1:8000 text="to be or not to be" top=2
    asynctask wait http://127.0.0.1:8000 <task_id>
"""

import os
import sys

from asynctask import Client
from asynctask.errors import TaskCancelled, TaskFailed


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    with Client(url, token=os.environ.get("ASYNCTASK_API_TOKEN")) as client:
        task_id = client.submit(text="to be or not to be that is the question", top=3)
        print(f"submitted {task_id}")
        try:
            result = client.wait(task_id, timeout=60)
        except TaskFailed as exc:
            print(f"the task failed:\n{exc.error}", file=sys.stderr)
            return 1
        except (TaskCancelled, TimeoutError) as exc:
            print(exc, file=sys.stderr)
            return 1
    for word, count in result:
        print(f"{count:3d}  {word}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
