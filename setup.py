"""Packaging for wsrelay.

``package_dir={"": "."}`` makes setuptools write a static ``.pth`` for editable installs, so the
project root lands on ``sys.path`` and Twisted's plugin scanner (which walks ``sys.path``
directories, not the import system) finds ``twisted/plugins/wsrelay_plugin.py``.  ``twisted.plugins``
is listed explicitly because it has no ``__init__.py`` here, and must never have one: installing it
would overwrite Twisted's own.
"""

from setuptools import find_packages, setup

setup(
    name="wsrelay",
    version="0.1.0",
    description="A WebSocket-aware reverse proxy on Twisted and Autobahn",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    package_dir={"": "."},
    packages=find_packages(include=["wsrelay", "wsrelay.*"]) + ["twisted.plugins"],
    install_requires=[
        "Twisted[tls]>=25.5",
        "autobahn>=24.4",
        "pyOpenSSL>=25.3",
        "service-identity>=24.1",
        "attrs>=23.1",
        "idna>=3.0",  # wsrelay.config.hosts: configured names to A-labels, as Twisted encodes them
        # wsrelay.http: request heads parsed by llhttp (strict, C speed), kept by the uvicorn project
        "httptools>=0.6",
        # wsrelay.admin: the Prometheus text format and its process collector, as every exporter
        # writes them (escaping, types, HELP lines), rather than a format of our own.
        "prometheus_client>=0.17",
    ],
    extras_require={
        "test": ["pytest>=8", "kosoku>=0.1", "websockets>=13", "treq>=24.9"],
    },
    entry_points={"console_scripts": ["wsrelay-demo-upstream=wsrelay.demo:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
