import { bytes } from "./format";

describe("bytes", () => {
  it("writes decimal units, three significant digits", () => {
    expect(bytes(1_520_000_000)).toBe("1.52 GB");
    expect(bytes(2_184_000_000)).toBe("2.18 GB");
    expect(bytes(15_340_000_000)).toBe("15.3 GB");
    expect(bytes(612_400_000)).toBe("612 MB");
    expect(bytes(1000)).toBe("1.00 kB");
    expect(bytes(999)).toBe("999 B");
    expect(bytes(3_200_000_000_000_000)).toBe("3200 TB"); // past the last unit: stays in it
  });

  it("says unknown as a dash: 0 is a replica that has not said (or is down)", () => {
    for (const value of [0, -1, null, undefined, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(bytes(value)).toBe("–");
    }
  });
});
