"""One plain function per queue (embed, explain, refit): the work, without Celery."""
