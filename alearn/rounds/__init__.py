"""Rounds: the state machine, the votes of a round, closing it, adjudication and convergence."""
