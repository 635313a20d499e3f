"""Ship the top-level conf/ inside the wheel as the package ``pyimgano_hydra.conf``."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["pyimgano_hydra", "pyimgano_hydra.*"])
    + ["pyimgano_hydra.conf", "hydra_plugins.pyimgano_hydra_sweepers"],
    package_dir={"pyimgano_hydra.conf": "conf"},
    package_data={"pyimgano_hydra.conf": ["*.yaml", "**/*.yaml"]},
)
