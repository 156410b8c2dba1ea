"""Development systems: small user-style systems to train CRABS on besides the paper's four tasks.

Each is built only through the public API a user has (a Gymnasium env whose observation is the
state, a :class:`~crabs.envs.SafetySpec`, a NumPy controller distilled with
:func:`crabs.initial.distill`, a :class:`~crabs.system.System`) and registers nothing globally.
Each module exposes ``make_system(seed=0)``, ``controller`` (the safe initial controller),
``strong_controller`` (the yardstick) and ``REFERENCE_RETURN`` (its return from s0)::

    import crabs
    from crabs.examples import lane_car
    crabs.train(lane_car.make_system(), crabs.config.Config(), out="runs/car")

See docs/examples.md.
"""

from crabs.examples import heavy_pendulum, lane_car, long_cartpole

# name -> module
EXAMPLES = {"heavy_pendulum": heavy_pendulum, "lane_car": lane_car, "long_cartpole": long_cartpole}

# name -> one-line description
DESCRIPTIONS = {
    "heavy_pendulum": "pendulum with m 1.3, l 0.8, torque 4: hold theta near 0.8 (reward -(theta - 0.8)^2), "
                      "safe |theta| <= 1; 2-D, 1 action, horizon 200",
    "lane_car": "kinematic car in a lane: steer and accelerate for progress v cos(psi) dt, "
                "safe |y| <= 1 and |v| <= 2; 3-D, 2 actions, horizon 200",
    "long_cartpole": "classic cart-pole with a 2 m, 0.3 kg pole: reward x^2, "
                     "safe |x| <= 1.5, |theta| <= 0.3, |x_dot| <= 1; 4-D, 1 action, horizon 500",
}

__all__ = ["EXAMPLES", "DESCRIPTIONS", "heavy_pendulum", "lane_car", "long_cartpole"]
