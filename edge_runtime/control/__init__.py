"""Commands on ``edge/D/cmd/VERB`` and what they do: the dispatcher (bounded queue, rate limit,
a reply for every message), the verbs, deploy transfers, and installing a model beside the one
serving (health check, swap between frames)."""
