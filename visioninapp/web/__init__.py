"""What every HTTP service of ours shares (the API and the edge runtime): the error body and the
middleware (request ids, body limits)."""
