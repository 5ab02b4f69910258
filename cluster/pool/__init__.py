"""Sizing the dedicated CPU pool: the pure policy of one run (`policy`), the pure split of a shared
pool between runs (`arbiter_policy`), the thin actors that apply them on Ray (`scaler` per run,
`arbiter` per cluster), and the simulators that compare policies at scales this machine cannot
run (`simulate` for one job, `simulate_shared` for several on one pool, `report` for targets)."""
