"""Usage accounting and quotas: what every LLM call cost, whom it is charged to, and the budgets
that stop a user's turns (see docs/usage.md)."""
