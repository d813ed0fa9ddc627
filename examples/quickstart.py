"""Quickstart: a word counter served over HTTP.

Run:  gunicorn 'examples.quickstart:app' --bind 127.0.0.1:8000 \
          --worker-class gthread --threads 8 --timeout 120
Then: curl -s -X POST localhost:8000/api -H 'Content-Type: application/json' \
           -d '{"data": {"text": "to be or not to be", "top": 2}}'
      curl -s localhost:8000/api/<task_id>

With no ASYNCTASK_MONGO_URI it keeps tasks in this process's memory (one worker only);
set ASYNCTASK_MONGO_URI=mongodb://host/ to keep them in MongoDB and run several workers.
"""

import hashlib
import logging
import os
from collections import Counter

from asynctask import AsyncTask, default_collection


class WordCount(AsyncTask):
    """Counts the most common words of a text."""

    def get_task_id(self, text: str, top: int = 10) -> str:
        return hashlib.sha1(f"{top}:{text}".encode()).hexdigest()

    def main(self, logger: logging.Logger, text: str, top: int = 10) -> list:
        logger.info("counting %d characters", len(text))
        return Counter(text.split()).most_common(top)


api = WordCount(default_collection(), os.environ.get("ASYNCTASK_LOG_DIR", "logs"), max_worker=4)
app = api.app("/api")

if __name__ == "__main__":
    app.run(port=int(os.environ.get("PORT", "8000")))
