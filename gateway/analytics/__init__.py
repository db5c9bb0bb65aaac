"""Edge analytics: frequency windows, energy and demand, anomaly and health scoring (docs/analytics.md).

Each analytic is a pure state machine over readings with an injected clock (see :mod:`gateway.analytics.base`);
the gateway feeds it the readings of its input points and stores what it returns.
"""
