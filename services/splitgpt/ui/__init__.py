"""`splitgpt ui`: the web UI (frontend/) served same-origin with a proxy to the API."""
