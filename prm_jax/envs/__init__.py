"""Text environments for agents: a batched interface (`text_env`) and the ALFWorld engine
(`alfworld`) with a local problem generator (`alfworld_gen`)."""
