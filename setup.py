"""Packaging for kvd; ``pip install .`` also installs the twistd dropin."""

from setuptools import find_packages, setup

setup(
    name="kvd",
    version="0.1.0",
    description="A replicated key/value store kept consistent by Raft, on Twisted",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["kvd", "kvd.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/kvd_plugin.py"], "kvd.discovery": ["static/*"]},
    py_modules=["mgmt"],
    install_requires=[
        "twisted>=22.10,<27",
        "lmdb>=1.4,<4",
        "crc32c>=2.3,<3",
        "lupa>=2.0,<3",
        "txaio>=23.1,<27",
        "click>=8.1,<9",
        "redis>=4.5,<9",
        "hiredis>=3.0,<4",
        "prometheus_client>=0.16,<1",
        "pyOpenSSL>=23.2,<28",
        "cryptography>=42,<52",
        "service_identity>=23.1,<28",
    ],
    extras_require={
        "test": ["pytest>=7,<10", "pytest-twisted>=1.14,<2", "dnspython>=2.3,<3", "selenium>=4.10,<5", "hypothesis>=6.80,<7", "pytest-timeout>=2.1,<3"],
    },
    entry_points={"console_scripts": ["kvd-mgmt=kvd.cli:main"]},
)
