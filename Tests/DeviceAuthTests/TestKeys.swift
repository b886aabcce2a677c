/// Key pairs made for these tests only (openssl genpkey); they protect nothing.
enum TestKeys {
    static let rsaPrivate = """
        -----BEGIN PRIVATE KEY-----
        MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDTSrZnIiY4faXm
        oCAGEIGBj9cOoMlJgoSFruNa/vHeavrB142PtMyXrqzb86byq49ajuhB5tQgNumk
        r6kK62kDa33LyHMVEI/bgWofxNbqe/q6IYKe/+On/dHnN3LWbYp5I6cpsr6DwAOu
        vCXwfsZ1A0drCCIDIMIxUUK8RmOuiXe76IpS/vTep9xexyzovHSp3Qnvz3Txgcyg
        koavGyCEFItwXSdxK9H88Os2b7ocQt6CMXJGyMXUlBpPMcYxliWwuOrDpENntY6O
        brSYykhU3+CfDMmNTx6OLfvdYRQxLRpb694Pb3NgUAwZWZu2z3YJciMhPR1qGjOp
        MS08x2cdAgMBAAECggEAJOj5yTVpeNfWOd4CCh0rCm+OsXL8Brfin5nIBLbhmKmW
        iXM2uwJp9Rth/gBnyx+WKMsrHowMxV3iXc8D2DD8hMjrzkQDeowMnVtTpx4TLx4e
        VBKTh2QLKGcKGnqQuI2lMXk9c+bSKiDKY+VhOUxkLb+3Y6aljmdUFRptbodbVXtD
        t/X5V2TioAH57ALGcG8tKd4QB5vkV44vg8y+ChTj52frSjEZKO7IoQeKCXVWPSgB
        89kZTnP4+0sBiR/9w4ENFzJTd3P553hLhuEoUEx4TtX4AYLr+6yIRKG9F7Heu890
        kcJMgdFbdFSiDEIPhY6FwBsyAcYNrAOEtH+5eF14/wKBgQD5SYGSBs3l5Wz5torj
        FZaaZWUbnWotO9Byte3Wv4txGVG37ctOiov8xBeucCNm0c0fADiaYWGlr+tinOSx
        yuCo+pJh/Y0bj3P2seKUMC7fuoFS4/kGIu2qK+kPWzb0rR0SxGRjmJWzQY2+pI0u
        MxZHwr1cTNIGxIG61qfHaYUInwKBgQDY+0fkfRzJrd8ESdWHjDR5ehLtttqtL2cz
        WBsagyU/RRvrVU1nTmcuDis4+Sk8jMQZPuNLiO8PQTQCE9P5lyh/tqqsSbsh0dWL
        ffHrt0RJqOL6o/f9uECm/ozX0Ji7wmagFtVYOhlIfujMvM9LgDYxvUEW57yj6Tji
        i3x2bSBqwwKBgQC6oa6QzelOiaI5ndGDS4FSHEFDGGoKbXKUvuHOWd8ikGsewbfp
        GE7PsVttbGUEsGPaJsc5xVhevEMEtCN/fD0QJXB8TmBbVt3hvrG8cgpV04LItQaV
        8oZuVauJpKeTLRvMFh52diD1cEmXhghwoyy2EvTD6nt/N5VMdTJtV/GSTwKBgE+P
        I3c2IL4aULGj2PWQhRUdm58p8tiZjv+WiKmZ+KhQUMJjTrRYXSDX9SU4xtP60VRo
        aLMjjHRNdiJk3s6fjCv38HCnwEPQSrqQ/Yluc02G7WL1iFKxopMYts/THo2J5FNC
        zAtDkk2wqu+XM3L9meF3AUzCv7piI4d9ma9aqA49AoGBANFbnp0P69NBB7nsx8r5
        5CJLVMYZA3qQFtJaW4/Hv77a2EvOaYpM6uYzUAbDm223rgANKfOXOMQhvMJzdy1q
        taJiB1nuxf5sfTgZvWg0kZAWK9T+yo66kwA5XdKMhwz5UvCjWsAwKV1xsk0WE8ZI
        bW/EaMD6y2F9XYEVY7apLBxt
        -----END PRIVATE KEY-----
        """

    static let rsaPublic = """
        -----BEGIN PUBLIC KEY-----
        MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA00q2ZyImOH2l5qAgBhCB
        gY/XDqDJSYKEha7jWv7x3mr6wdeNj7TMl66s2/Om8quPWo7oQebUIDbppK+pCutp
        A2t9y8hzFRCP24FqH8TW6nv6uiGCnv/jp/3R5zdy1m2KeSOnKbK+g8ADrrwl8H7G
        dQNHawgiAyDCMVFCvEZjrol3u+iKUv703qfcXscs6Lx0qd0J78908YHMoJKGrxsg
        hBSLcF0ncSvR/PDrNm+6HELegjFyRsjF1JQaTzHGMZYlsLjqw6RDZ7WOjm60mMpI
        VN/gnwzJjU8eji373WEUMS0aW+veD29zYFAMGVmbts92CXIjIT0dahozqTEtPMdn
        HQIDAQAB
        -----END PUBLIC KEY-----
        """

    static let ecPrivate = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNHIozhsn9uvmUNA5
        oNSWa5l0Smtl+JDmpcu1zCvG9JyhRANCAASKArnyHg50b4sDEPi2KXk5P4ypkBib
        VvCkRdEYXL/dKHVUCPuRhJ9Vm8RY0hriCEP4gwXPHTyP5CKmeYW+3Mu5
        -----END PRIVATE KEY-----
        """

    static let ecPublic = """
        -----BEGIN PUBLIC KEY-----
        MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEigK58h4OdG+LAxD4til5OT+MqZAY
        m1bwpEXRGFy/3Sh1VAj7kYSfVZvEWNIa4ghD+IMFzx08j+QipnmFvtzLuQ==
        -----END PUBLIC KEY-----
        """

    // P-384 and P-521, for ES384 and ES512.
    static let ecP384Private = """
        -----BEGIN PRIVATE KEY-----
        MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDD1xiBU+xSjH8GGOCV4
        Ut8dWYIqp1A2ThkoZ4QxQnhIw8+nNZpYFPhVWUNRL2wH3hChZANiAASTdeTt8FTv
        IcO1OiP5zw12MpnxUrjiTO2fgIlEZgiHI1ErcpvUFR1smw7P9zHPE9YK0Zt1QTb2
        06n9U+mXMcSTMYR3H3WtPjLOGtKOw+yEmVeVodbwmkOxCYrFX5Sky2w=
        -----END PRIVATE KEY-----
        """

    static let ecP384Public = """
        -----BEGIN PUBLIC KEY-----
        MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEk3Xk7fBU7yHDtToj+c8NdjKZ8VK44kzt
        n4CJRGYIhyNRK3Kb1BUdbJsOz/cxzxPWCtGbdUE29tOp/VPplzHEkzGEdx91rT4y
        zhrSjsPshJlXlaHW8JpDsQmKxV+UpMts
        -----END PUBLIC KEY-----
        """

    static let ecP521Private = """
        -----BEGIN PRIVATE KEY-----
        MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIBE903M1F4/7D/iKyX
        YrAcV7MYtXN5gY2e4QKj3I6XusxJmfXfbL7bfkxR+WBm3XArGWGImHkLhbw1Hb0L
        Sg6EQS6hgYkDgYYABAAZIJGC+euci77Ta+vmrFEWnezEOr1qdtkHQ0+0m1/HRPaB
        umFSSG5pIkdN8lA0S6x1ty2mzpd2Q91wzrZ3SOfn5gF0JAFFoNnvczqQ0SHqANQa
        pivnzlUZoFb9QXvieWwo8IDLUdq9MfqhZXpmHgy2SP7wmEiLOfpOfdBtkvnCVZbN
        uw==
        -----END PRIVATE KEY-----
        """

    static let ecP521Public = """
        -----BEGIN PUBLIC KEY-----
        MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQAGSCRgvnrnIu+02vr5qxRFp3sxDq9
        anbZB0NPtJtfx0T2gbphUkhuaSJHTfJQNEusdbctps6XdkPdcM62d0jn5+YBdCQB
        RaDZ73M6kNEh6gDUGqYr585VGaBW/UF74nlsKPCAy1HavTH6oWV6Zh4Mtkj+8JhI
        izn6Tn3QbZL5wlWWzbs=
        -----END PUBLIC KEY-----
        """
}
