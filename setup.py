import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "asynctask" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="asynctask",
    version=VERSION,
    description="Turn a function into a durable HTTP task service backed by MongoDB",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["asynctask", "asynctask.*"]),
    python_requires=">=3.10",
    install_requires=[
        "flask>=2.3",
        "pymongo>=4.4",
        "mongomock>=4.1",
        "gunicorn>=21.2",
        "pebble>=5.0",
        "prometheus_client>=0.17",
        "requests>=2.28",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "distributed>=2023.1",
            "openapi-spec-validator>=0.7",
            "schemathesis>=4.0,<5",
        ],
        "dev": ["pytest>=7.4", "ruff>=0.5", "tox>=4"],
        "dask": ["distributed>=2023.1"],
    },
    entry_points={"console_scripts": ["asynctask = asynctask.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Flask",
        "License :: OSI Approved :: MIT License",
    ],
)
