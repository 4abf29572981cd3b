"""TLS with pyOpenSSL, the only package of wsrelay that uses it.  No reactor.

- :mod:`wsrelay.tls.server`: the listeners' side: certificates loaded and checked, one context per
  certificate chosen by SNI, safe defaults, contexts swapped on reload;
- :mod:`wsrelay.tls.upstream`: the client side toward ``https://`` upstream servers: verification
  against the system trust store or ``tls_ca``, one connection creator per setting, failures
  described for the log;
- :mod:`wsrelay.tls.state`: what one process has in service across reloads (the service's),
  loaded whole before anything changes.

Nothing is imported here: ``import wsrelay.tls`` alone loads no OpenSSL.
"""
