"""Sizing the dedicated CPU pool: the pure policy, the scaler that applies it on Ray, and the
simulator that compares policies at scales this machine cannot run."""
