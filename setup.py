"""Ship the Hydra configs (``pyimgano_hydra/conf``, YAML in sub-folders) inside the wheel."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["pyimgano_hydra", "pyimgano_hydra.*"])
    + ["hydra_plugins.pyimgano_hydra_sweepers"],
    package_data={"pyimgano_hydra.conf": ["*.yaml", "**/*.yaml"]},
)
