"""`ftbench doctor`: checks a machine before a long run (see ftbench.doctor.checks), and
the helpers it shares with the tests: distributed parity and resharding runs
(ftbench.doctor.parity) and measured peak memory (ftbench.doctor.memory)."""
