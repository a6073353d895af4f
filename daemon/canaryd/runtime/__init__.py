"""asyncio: the supervisor, one worker per rollout, the batched evaluator, the alert inbox."""
