import { bytes, count, modelLabel } from "./format";

describe("bytes", () => {
  it("writes decimal units, three significant digits", () => {
    expect(bytes(1_520_000_000)).toBe("1.52 GB");
    expect(bytes(2_184_000_000)).toBe("2.18 GB");
    expect(bytes(15_340_000_000)).toBe("15.3 GB");
    expect(bytes(612_400_000)).toBe("612 MB");
    expect(bytes(1000)).toBe("1.00 kB");
    expect(bytes(999)).toBe("999 B");
    expect(bytes(3_200_000_000_000_000)).toBe("3200 TB"); // past the last unit: stays in it
    // three digits at the edges too
    expect(bytes(99_990)).toBe("100 kB");
    expect(bytes(9_999)).toBe("10.0 kB");
    expect(bytes(999_960)).toBe("1.00 MB");
  });

  it("says unknown as a dash: 0 is a replica that has not said (or is down)", () => {
    for (const value of [0, -1, null, undefined, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(bytes(value)).toBe("–");
    }
  });
});

describe("count and modelLabel", () => {
  it("write a count short", () => {
    expect([count(40), count(4096), count(65_536), count(9_999), count(1_234_567), count(undefined)]).toEqual(["40", "4.1k", "66k", "10k", "1.2M", "–"]);
  });

  it("name a model by its checkpoint's last part", () => {
    expect(modelLabel("/tmp/x/tiny-gpt2")).toBe("tiny-gpt2");
    expect(modelLabel("models/tiny-gpt2/")).toBe("tiny-gpt2");
    expect(modelLabel("second")).toBe("second");
  });
});
