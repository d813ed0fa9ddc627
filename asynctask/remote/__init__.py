"""Remote workers: run a task type's `main` on machines that reach the service over HTTP only
(`asynctask worker MODULE:OBJ --url URL`). The service's side is `asynctask.web.worker_routes`."""
