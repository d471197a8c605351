"""Getting work to the workers: queue names, the publisher, the outbox and the sweep."""
