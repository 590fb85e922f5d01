"""An independent, deliberately plain model of SPEC section 4 (and 2's target rule).

Written from the specification text, with plain dicts and no shared code with
ncsniffer, so the tests can compare the real pipeline against it.
"""


def new_state(now):
    return {"start": now, "rate": 0, "bw": 0, "ra": 0, "ba": 0, "nextrate": 300,
            "next": now + 300, "ips": {}}


def account(st, ip, length, now):
    if st["next"] > now or (st["rate"] < 1 and st["ra"] < 5):
        st["ba"] += length
        st["ra"] += 1
    else:
        if st["rate"] < 1:
            dt = max(now - st["start"], 1)
        else:
            dt = 3600 + now + st["nextrate"] - st["next"]
        m = 3600.0 / dt
        st["rate"] = (st["rate"] + st["ra"]) * m
        st["bw"] = (st["bw"] + st["ba"]) * m
        st["ba"] = length
        st["ra"] = 1
        st["next"] = now + 60
        st["nextrate"] = 60
    rec = st["ips"].get(ip)
    if rec is None:
        st["ips"][ip] = {"B": length, "C": 1, "E": now, "N": [], "R": 0, "S": st["start"],
                         "T": 0, "W": 0}
        return
    if rec["E"] + 300 > now or (rec["E"] == rec["S"] and rec["C"] < 5):
        rec["B"] += length
        rec["C"] += 1
    else:
        dt = now - rec["S"] if rec["S"] == rec["E"] else 3600 + now - rec["E"]
        m = 3600.0 / dt
        rec["R"] = (rec["R"] + rec["C"]) * m
        rec["W"] = (rec["W"] + rec["B"]) * m
        rec["E"] = now
        rec["B"] = length
        rec["C"] = 1


def purge(st, now):
    for ip in [ip for ip, rec in st["ips"].items() if rec["E"] + 86400 < now]:
        del st["ips"][ip]


def rounded(st):
    """Records as a stats file shows them: R and W rounded like %.0f."""
    out = {}
    for ip, rec in st["ips"].items():
        r = dict(rec)
        r["R"] = int("%.0f" % r["R"])
        r["W"] = int("%.0f" % r["W"])
        out[ip] = r
    return out


def replay(packets, me, match=None, nomatch=None, payload=None, snaplen=38, purge_daily=True):
    """Model of ``nc.sniffer -r``: packets are (ts, src_ip, dst_ip, wirelen, frame_bytes)."""
    st = None
    last = None
    for ts, src, dst, wirelen, data in packets:
        now = int(ts)
        if st is None:
            st = new_state(now)
            last = now
        elif now > last:
            if purge_daily:
                purge(st, now)
            last = now
        if match is not None or nomatch is not None:
            window = data[payload:snaplen].lower()
            if match is not None and match.lower() not in window:
                continue
            if nomatch is not None and nomatch.lower() in window:
                continue
        account(st, dst if src == me else src, wirelen, now)
    return st
