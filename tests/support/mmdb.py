"""Small MaxMind ASN databases written with mmdb-writer, for the agent's ASN lookup tests."""
import pytest

NETWORKS = {
    "1.0.0.0/24": (13335, "CLOUDFLARENET"),
    "8.8.8.0/24": (15169, "GOOGLE"),
    "192.0.2.0/25": (64500, "DOC-NET-A"),
    "192.0.2.128/25": (64501, "DOC-NET-B"),
    "2001:db8::/32": (64496, "V6-DOC"),
    "2001:db8:aa::/48": (4200000000, "V6-MORE-SPECIFIC"),  # 32-bit ASN above 2**31
}


def asn_database(path, ip_version=6, extra=()):
    """A GeoLite2-ASN database at `path` with NETWORKS (the IPv4 ones only for ip_version 4) and the
    (cidr, record) pairs of `extra`; the test is skipped without mmdb-writer and netaddr."""
    mmdb_writer = pytest.importorskip("mmdb_writer")
    IPSet = pytest.importorskip("netaddr").IPSet
    writer = mmdb_writer.MMDBWriter(
        ip_version=ip_version, database_type="GeoLite2-ASN", description="myason test",
        ipv4_compatible=(ip_version == 6))
    for net, (asn, org) in NETWORKS.items():
        if ip_version == 4 and ":" in net:
            continue
        writer.insert_network(IPSet([net]), {
            "autonomous_system_number": mmdb_writer.MmdbU32(asn),
            "autonomous_system_organization": org,
        })
    for net, record in extra:
        writer.insert_network(IPSet([net]), record)
    writer.to_db_file(str(path))
    return path
